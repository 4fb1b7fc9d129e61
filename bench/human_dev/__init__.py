"""The human-written dev set (``python -m bench.human_dev.build``)."""
