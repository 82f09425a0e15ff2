"""The delivery store: deliveries, attempts and each subscription's cursor; its records, rules
and engines.
"""
