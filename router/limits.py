"""Size limits of what the router accepts (the same as the event contracts' in ``streams.contract.fields``)."""

#: item ids, user ids, request ids and history entries: at most this many characters
ID_CHARS = 256
#: content types and statistic names: at most this many characters
NAME_CHARS = 64
#: inline statistics of one candidate: at most this many
MAX_STATS = 64
#: a user history: at most this many entries
MAX_HISTORY = 1000
#: the largest magnitude of an inline statistic (float32's): above it a value is rejected, not inf
MAX_VALUE = 3.4028234663852886e38
