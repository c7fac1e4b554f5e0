"""Web views of the worker (Faust web server). See :mod:`smartflow_streams.web.views`."""

from smartflow_streams.web.views import define_views

__all__ = ["define_views"]
