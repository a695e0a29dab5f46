"""The live dashboard of a fleet (``hffm dashboard``): :class:`~cloud.dashboard.view.FleetView` (what the page
shows, built from the fleet's messages) and :class:`~cloud.dashboard.server.Dashboard` (MQTT in, HTTP out)."""
