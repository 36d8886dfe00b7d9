"""Will it fit? The per-GPU memory plan (`memory_plan`, pure numbers) and the configs-to-plan checks (`memory_check`)."""
