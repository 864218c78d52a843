"""Reference sets by name: Hugging Face datasets, parquet/arrow files, reusable reference statistics."""
