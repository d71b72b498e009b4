"""DICOM ingestion: crawl and link series (index), CT -> NIfTI (series), RTSTRUCT -> masks."""
