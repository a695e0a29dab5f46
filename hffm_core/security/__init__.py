"""Fleet security: certificates and mutual TLS, broker ACLs, signed envelopes, client-side differential privacy.

Each concern is its own module; see docs/security.md.
"""
