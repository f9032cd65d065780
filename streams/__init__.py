"""fluxscore streams: the Faust workers around the scoring stages.

Agents take micro-batches from Kafka, call the stage functions of :class:`scoring.pipeline.Pipeline`
unchanged, and add what a stream needs: dead letters, Redis idempotency, metrics and hot reload.
"""
