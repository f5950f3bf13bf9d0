"""Prompts shared by the generators.

``DEFAULT_SYSTEM_PROMPT`` is the math prompt of Hugging Face's search-and-learn recipes, which
the paper (Puri et al., 2025) uses: steps separated by blank lines (the default step
delimiter ``"\\n\\n"``) and a final ``\\boxed{}`` answer. ``Problem.system_prompt`` overrides it.
"""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- For simple problems (2 steps or fewer):\n"
    "Provide a concise solution with minimal explanation.\n\n"
    "- For complex problems (3 steps or more):\n"
    "Use this step-by-step format:\n\n"
    "## Step 1: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n"
    "[Brief explanation and calculations]\n\n"
    "...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem."
)
