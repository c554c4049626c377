"""The cost/capability router and the local InferenceGraph runner."""
