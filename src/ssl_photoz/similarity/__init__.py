"""Similarity search: embeddings, the FAISS index, neighbours and anomalies, their figures."""
