"""Datasets the notebooks train on: bundled samples and their hub counterparts."""
