"""`hap eval` and its report, and the replay's ceiling beyond the counter."""
