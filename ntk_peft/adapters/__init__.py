"""Adapter families (RoCoFT rows/columns, LoRA, MoRe, LoRTA, LoRMA, BitFit, IA3, masks).

Arrives with the adapters issue; see ../shared/DESIGN.md for the protocol.
"""
