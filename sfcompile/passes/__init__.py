"""Graph passes over captured models: discovery of prunable sites, and (in lowering) rewrites."""
