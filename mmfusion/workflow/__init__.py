"""Glue between the package and the Snakemake workflow (imported by workflow/rules/*.smk):
`inputs` (the cohort's paths and the rules' input functions), `resources` (each rule's
mem_mb/runtime/gpu from the config) and `batches` (the group-components batching fix).
Torch-free, so the Snakefile parses without the deep-learning stack."""
