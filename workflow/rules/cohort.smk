# cohort stage rules (not written yet).
