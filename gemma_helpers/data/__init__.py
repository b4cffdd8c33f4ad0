"""Data preparation: each module turns one kind of raw source (bundled samples, hub sets, video clips) into training rows."""
