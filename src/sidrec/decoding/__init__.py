"""Decoding semantic IDs into ranked items: the SID trie, constrained beam search, and a reference decoder."""

from sidrec.decoding.beam import BeamResult, StepDecoder, beam_search, distinct_items
from sidrec.decoding.trie import SIDCodes, SIDTrie

__all__ = ["BeamResult", "SIDCodes", "SIDTrie", "StepDecoder", "beam_search", "distinct_items"]
