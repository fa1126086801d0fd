"""The arm64 backend: A64 encodings (encode), instruction selection (select)."""
