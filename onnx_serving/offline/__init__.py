"""Batch inference outside the service: the predict-file client and the Spark job. Not in the
bento.
"""
