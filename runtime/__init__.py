"""The predictor: a KServe model server around the continuous-batching engine."""
