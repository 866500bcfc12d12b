"""Nipype workflows (``init_*_wf`` factories) composing the qsmprep interfaces."""
