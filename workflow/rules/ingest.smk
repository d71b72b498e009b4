# ingest stage rules (not written yet).
