"""RULER, offline: data generation for its 13 tasks, model prompt templates, official scoring, result tables."""
