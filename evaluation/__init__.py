"""Measurement: retrieval quality (leave-one-out mAP, copy detection) and the vector-index benchmark."""
