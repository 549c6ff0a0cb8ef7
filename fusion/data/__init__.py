"""Datasets, frame sampling, clip transforms, flow quantisation and the synthetic demo data."""
