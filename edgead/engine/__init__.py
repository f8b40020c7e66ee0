"""Training, evaluation and model selection for teacher-student detectors."""
