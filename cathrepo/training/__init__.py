"""Training: the two-phase teacher→student distillation behind ``--method lora`` (stage ④).

``data`` builds teacher/student pairs and anchors, ``targets`` computes what they are fitted to from the
frozen base model, ``adapters`` attaches a PEFT LoRA for the duration of training and reads it back as a
Delta, ``replay`` skips the frozen layers below the lowest adapter, ``distill`` runs phases A and B.
"""
