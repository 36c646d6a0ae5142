"""The HTTP side: the app factory, middlewares, the route table and the views."""
