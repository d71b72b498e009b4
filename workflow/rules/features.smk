# features stage rules (not written yet).
