"""BABILong task files, answer labels and prompts (instruction, examples, post-prompt)."""

from __future__ import annotations

TASK_FILES = {
    "qa1": "qa1_single-supporting-fact", "qa2": "qa2_two-supporting-facts", "qa3": "qa3_three-supporting-facts",
    "qa4": "qa4_two-arg-relations", "qa5": "qa5_three-arg-relations", "qa6": "qa6_yes-no-questions",
    "qa7": "qa7_counting", "qa8": "qa8_lists-sets", "qa9": "qa9_simple-negation",
    "qa10": "qa10_indefinite-knowledge", "qa11": "qa11_basic-coreference", "qa12": "qa12_conjunction",
    "qa13": "qa13_compound-coreference", "qa14": "qa14_time-reasoning", "qa15": "qa15_basic-deduction",
    "qa16": "qa16_basic-induction", "qa17": "qa17_positional-reasoning", "qa18": "qa18_size-reasoning",
    "qa19": "qa19_path-finding", "qa20": "qa20_agents-motivations",
}
TASKS = list(TASK_FILES)
DEFAULT_TASKS = ["qa1", "qa2", "qa3", "qa4", "qa5"]

_ROOMS = ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
LABELS = {
    "qa1": _ROOMS, "qa2": _ROOMS, "qa3": _ROOMS, "qa4": _ROOMS,
    "qa5": ["Bill", "Fred", "Jeff", "Mary", "apple", "football", "milk"],
    "qa6": ["no", "yes"], "qa7": ["none", "one", "three", "two"], "qa8": ["apple", "football", "milk", "nothing"],
    "qa9": ["no", "yes"], "qa10": ["maybe", "no", "yes"], "qa11": _ROOMS, "qa12": _ROOMS, "qa13": _ROOMS,
    "qa14": ["bedroom", "cinema", "kitchen", "office", "park", "school"], "qa15": ["cat", "mouse", "sheep", "wolf"],
    "qa16": ["gray", "green", "white", "yellow"], "qa17": ["no", "yes"], "qa18": ["no", "yes"],
    "qa19": ["e,e", "e,n", "e,s", "n,e", "n,n", "n,w", "s,e", "s,s", "s,w", "w,n", "w,s", "w,w"],
    "qa20": ["bedroom", "bored", "garden", "hungry", "kitchen", "thirsty", "tired"],
}

# BABILong's prompts for qa1-qa5 (instruction, in-context examples, post-prompt).
PROMPTS = {
    "qa1": dict(
        instruction="I will give you context with the facts about positions of different persons hidden in some "
        "random text and a question. You need to answer the question based only on the information from the "
        "facts. If a person was in different locations, use the latest location to answer the question.",
        examples="<example>\nCharlie went to the hallway. Judith come back to the kitchen. Charlie travelled to "
        "balcony. Where is Charlie?\nAnswer: The most recent location of Charlie is balcony.\n</example>\n\n"
        "<example>\nAlan moved to the garage. Charlie went to the beach. Alan went to the shop. Rouse travelled to "
        "balcony. Where is Alan?\nAnswer: The most recent location of Alan is shop.\n</example>",
        post_prompt="Always return your answer in the following format: The most recent location of ’person’ is "
        "’location’. Do not write anything else after that.",
    ),
    "qa2": dict(
        instruction="I give you context with the facts about locations and actions of different persons hidden in "
        "some random text and a question.You need to answer the question based only on the information from the "
        "facts.\nIf a person got an item in the first location and travelled to the second location the item is "
        "also in the second location. If a person dropped an item in the first location and moved to the second "
        "location the item remains in the first location.",
        examples="<example>\nCharlie went to the kitchen. Charlie got a bottle. Charlie moved to the balcony. Where "
        "is the bottle?\nAnswer: The bottle is in the balcony.\n</example>\n<example>\nAlan moved to the garage. "
        "Alan got a screw driver. Alan moved to the kitchen. Where is the screw driver?\nAnswer: The screw driver "
        "is in the kitchen.\n</example>",
        post_prompt="Always return your answer in the following format: The ’item’ is in ’location’. Do not write "
        "anything else after that.",
    ),
    "qa3": dict(
        instruction="I give you context with the facts about locations and actions of different persons hidden in "
        "some random text and a question. You need to answer the question based only on the information from the "
        "facts.\nIf a person got an item in the first location and travelled to the second location the item is "
        "also in the second location. If a person dropped an item in the first location and moved to the second "
        "location the item remains in the first location.",
        examples="<example>\nJohn journeyed to the bedroom. Mary grabbed the apple. Mary went back to the bathroom. "
        "Daniel journeyed to the bedroom. Daniel moved to the garden. Mary travelled to the kitchen. Where was the "
        "apple before the kitchen?\nAnswer: Before the kitchen the apple was in the bathroom.\n</example>\n"
        "<example>\nJohn went back to the bedroom. John went back to the garden. John went back to the kitchen. "
        "Sandra took the football. Sandra travelled to the garden. Sandra journeyed to the bedroom. Where was the "
        "football before the bedroom?\nAnswer: Before the bedroom the football was in the garden.\n</example>",
        post_prompt="Always return your answer in the following format: Before the $location_1$ the $item$ was in "
        "the $location_2$. Do not write anything else after that.",
    ),
    "qa4": dict(
        instruction="I will give you context with the facts about different people, their location and actions, "
        "hidden in some random text and a question. You need to answer the question based only on the "
        "information from the facts.",
        examples="<example>\nThe hallway is south of the kitchen. The bedroom is north of the kitchen. What is the "
        "kitchen south of?\nAnswer: bedroom\n</example>\n<example>\nThe garden is west of the bedroom. The bedroom "
        "is west of the kitchen. What is west of the bedroom?\nAnswer: garden\n</example>",
        post_prompt="Your answer should contain only one word - location. Do not write anything else after that.",
    ),
    "qa5": dict(
        instruction="I will give you context with the facts about locations and their relations hidden in some "
        "random text and a question. You need to answer the question based only on the information from the "
        "facts.",
        examples="<example>\nMary picked up the apple there. Mary gave the apple to Fred. Mary moved to the "
        "bedroom. Bill took the milk there. Who did Mary give the apple to?\nAnswer: Fred\n</example>\n<example>\n"
        "Jeff took the football there. Jeff passed the football to Fred. Jeff got the milk there. Bill travelled "
        "to the bedroom. Who gave the football?\nAnswer: Jeff\n</example>\n<example>\nFred picked up the apple "
        "there. Fred handed the apple to Bill. Bill journeyed to the bedroom. Jeff went back to the garden. What "
        "did Fred give to Bill?\nAnswer: apple\n</example>",
        post_prompt="Your answer should contain only one word. Do not write anything else after that. Do not "
        "explain your answer.",
    ),
}


def prompt_for(task: str) -> dict:
    """qa1-qa5: BABILong's own prompts; other tasks: a plain instruction naming the possible answers."""
    if task in PROMPTS:
        return PROMPTS[task]
    return dict(
        instruction="I will give you context with facts hidden in some random text and a question. You need to "
        "answer the question based only on the information from the facts.",
        examples="",
        post_prompt=f"Answer with one of: {', '.join(LABELS[task])}. Do not write anything else after that.",
    )
