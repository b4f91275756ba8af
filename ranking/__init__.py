"""Pistis-RAG ranking cascade: matching, pre-ranking, list-aware ranking, aggregation."""
