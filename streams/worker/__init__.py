"""The worker runtime: the Faust app around the join, its supervisor (watchdog) and its command line."""
