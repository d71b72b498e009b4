# model stage rules (not written yet).
