"""Image shards over fsspec (local, file://, s3://), robust decoding, the synthetic dataset."""
