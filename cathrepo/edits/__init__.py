"""Edit methods: each turns facts into a low-rank Delta (stage ④ of DESIGN.md §2)."""
