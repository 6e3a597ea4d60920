"""Writes train.csv and test.csv: the labelled sample the quick start uses (templates written for this project)."""

import csv
import os
import random

random.seed(7)
things = [
    "the new update",
    "this app",
    "the checkout page",
    "your support team",
    "the delivery",
    "the dark mode",
    "the latest release",
    "the mobile app",
    "the onboarding",
    "customer service",
    "the search feature",
    "the subscription price",
    "the new design",
    "the notifications",
    "the login flow",
    "my order",
]
pos = [
    "I love {t} 😍",
    "{t} is sooo good!!!",
    "honestly {t} is amazing 🔥🔥",
    "{t} just made my day :)",
    "big thanks for {t}, works perfectly 👍",
    "{t} is lit, no cap",
    "wow {t} is fantastic &amp; fast",
    "can't complain, {t} is great",
    "{t} slaps 😂❤️",
    "really impressed with {t} #happy",
    "{t} is the best thing this year <3",
    "shoutout to @team for {t}!! 🙌",
    "{t} works like a charm ✨",
    "not bad at all, {t} is actually great",
    "10/10 would recommend {t}",
    "yesss {t} finally works 🎉",
    "{t} is smooth and easy, love it",
    "{t}? absolutely brilliant :D",
    "so happy with {t} 😊",
    "{t} never disappoints 💯",
]
neg = [
    "I hate {t} 😡",
    "{t} is sooo bad!!!",
    "honestly {t} is terrible 🤮",
    "{t} ruined my day :(",
    "{t} keeps crashing, fix it 👎",
    "{t} is trash, no cap",
    "wow {t} is slow &amp; broken",
    "can't stand {t} anymore",
    "{t} is a joke 🙄",
    "really disappointed with {t} #fail",
    "{t} is the worst thing this year </3",
    "@team {t} still doesn't work!! 😤",
    "{t} is a mess 💩",
    "not good at all, {t} is awful",
    "0/10 would not recommend {t}",
    "ugh {t} broke again 😭",
    "{t} is confusing and painful",
    "{t}? absolutely useless :/",
    "so annoyed with {t} 😒",
    "{t} never works 😠",
]
neu = [
    "just tried {t}",
    "{t} is out today",
    "anyone else using {t}?",
    "{t} changed this morning",
    "is {t} available in Canada?",
    "reading about {t} now",
    "{t} will be updated on Friday",
    "@team when does {t} arrive?",
    "{t} is different from last week",
    "checking {t} after lunch",
    "{t} has 3 new options",
    "does {t} work on android?",
    "{t} moved to the settings menu",
    "not sure what to think of {t} yet",
    "{t} info here https://example.com/faq",
    "what time does {t} start?",
    "{t} is scheduled for 5pm",
    "my friend mentioned {t}",
    "{t}: see the notes #release",
    "looking at {t} 🤔",
]
# The test file talks about products the training file never mentions.
splits = {"train.csv": (things[:12], 6), "test.csv": (things[12:], 2)}
here = os.path.dirname(os.path.abspath(__file__))
for name, (subjects, per_template) in splits.items():
    rows = []
    for label, templates in (("positive", pos), ("negative", neg), ("neutral", neu)):
        for tpl in templates:
            for t in random.sample(subjects, per_template):
                text = tpl.format(t=t)
                if text[0].islower() and random.random() < 0.3:
                    text = text[0].upper() + text[1:]
                rows.append((text, label))
    random.shuffle(rows)
    with open(os.path.join(here, name), "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(name, len(rows))
