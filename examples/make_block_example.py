"""Writes examples/block_passages.jsonl: passages about a made-up harbour town and questions over them.

Every line gives its passages as "blocks" (in a different order per question) and one question, so in one
run the first line encodes the passages and every later line finds them in the block cache.
"""

import json
import random
from pathlib import Path

PASSAGES = [
    "Harbour notes. The town of Velmora sits on a narrow bay. Its lighthouse, painted green and white, was "
    "built in 1862 by a shipwright named Odile Marsh, who also designed the town's first stone pier.",
    "Market notes. On Tuesdays the Velmora market sells smoked herring, rye bread and blue wool. The most "
    "expensive stall belongs to a cheesemaker who ages her wheels in a sea cave for eleven months.",
    "Weather notes. Fog covers Velmora bay on about ninety mornings a year. When the fog bell rings three "
    "times, fishing boats must stay inside the breakwater until noon.",
    "School notes. The Velmora school has forty-two pupils and one telescope. Every autumn the pupils count "
    "migrating cranes from the roof; last year they counted three hundred and six.",
    "Festival notes. Each June the town holds the Lantern Regatta. Boats are judged on their lanterns, and "
    "the winner receives a brass compass engraved with the year.",
]
QUESTIONS = [
    ("Who built the Velmora lighthouse?", "Odile Marsh"),
    ("How long does the cheesemaker age her cheese?", "eleven months"),
    ("What must fishing boats do when the fog bell rings three times?", "stay inside the breakwater"),
    ("How many cranes did the pupils count last year?", "three hundred and six"),
    ("What does the winner of the Lantern Regatta receive?", "a brass compass"),
    ("In which year was the lighthouse built?", "1862"),
]


def main():
    rng = random.Random(0)
    out = Path(__file__).with_name("block_passages.jsonl")
    with open(out, "w") as f:
        for i, (q, a) in enumerate(QUESTIONS):
            order = list(range(len(PASSAGES)))
            rng.shuffle(order)
            blocks = [PASSAGES[j] + "\n\n" for j in order]
            f.write(json.dumps({"index": i, "blocks": blocks,
                                "input_query": f"Answer in a few words. Question: {q}", "outputs": [a]}) + "\n")
    print(out)


if __name__ == "__main__":
    main()
