"""The built-in provider plugins, each written exactly as a third-party plugin would be."""
