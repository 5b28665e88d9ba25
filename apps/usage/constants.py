# An API key needs this scope to read usage through /api/usage (as its owner may: scope.py).
USAGE_READ_SCOPE = "usage:read"
