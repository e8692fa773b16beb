"""clerk-auth-proxy: an authenticating reverse proxy for APIs behind Clerk."""

__version__ = "0.1.0"
