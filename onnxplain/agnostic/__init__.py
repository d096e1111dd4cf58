"""Model-agnostic methods (occlusion, LIME): they only need the model's predictions."""
