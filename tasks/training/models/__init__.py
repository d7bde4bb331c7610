"""The models: one module each, with the spec that tells the pipeline all it knows of it;
`registry` lists the specs."""
