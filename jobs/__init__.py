"""Stage drivers and the `sas-ray` CLI: build Ray pipelines from a validated config, record manifests, report."""
