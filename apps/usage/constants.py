# An API key needs this scope to read usage through /api/usage (as its owner may: scope.py).
USAGE_READ_SCOPE = "usage:read"
# Rollups keep a tag value up to this many characters (`tag_value` columns).
TAG_VALUE_LENGTH = 256
