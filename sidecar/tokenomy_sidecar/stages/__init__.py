"""The request pipeline, one module a stage (DESIGN.md, "The sidecar request pipeline")."""
