"""Data preparation: each module turns one kind of raw source into training rows."""
