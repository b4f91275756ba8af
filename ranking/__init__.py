"""Pistis-RAG ranking cascade: dense/sparse matching, pre-ranking and listwise losses."""
