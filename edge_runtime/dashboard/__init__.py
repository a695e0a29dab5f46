"""The live dashboard of a fleet (``hffm dashboard``): :class:`~edge_runtime.dashboard.view.FleetView` (what the page
shows, built from the fleet's messages) and :class:`~edge_runtime.dashboard.server.Dashboard` (MQTT in, HTTP out)."""
