"""The `hap` subcommands that wire the settings into the components: simulate, streams, learner, router, models."""
