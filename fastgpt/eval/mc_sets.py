"""Built-in multiple-choice sets, written for fastgpt (no third-party data).

- ``shakespeare``: cloze items on well-known lines from the plays. The context is the start of a line
  and each choice a continuation; the right one is the word Shakespeare wrote. A model pretrained on
  the built-in ``shakespeare`` corpus has seen these lines (in the Gutenberg text's own punctuation),
  so this measures what pretraining stored, item by item, beside the aggregate bits per byte.
- ``basics``: short questions of general knowledge, arithmetic and common sense with four answers,
  the kind of thing a small instruction-tuned model (SmolLM2-135M) gets mostly right and a model trained
  only on the built-in corpora gets near chance (25 %).

Each item is ``(context_or_question, [choices], index_of_the_right_choice)``; the right answer is not
always first (the order below is fixed and varied by hand).
"""

from __future__ import annotations

__all__ = ["BUILTIN_MC"]

SHAKESPEARE = [
    ("To be, or not to be: that is the", [" answer", " question", " problem", " matter"], 1),
    ("Now is the winter of our", [" discontent", " content", " sorrow", " kingdom"], 0),
    ("A horse! a horse! my kingdom for a", [" crown", " sword", " horse", " king"], 2),
    ("Friends, Romans, countrymen, lend me your", [" eyes", " hands", " swords", " ears"], 3),
    ("But, soft! what light through yonder window", [" breaks", " shines", " falls", " burns"], 0),
    ("All the world's a", [" play", " stage", " dream", " sea"], 1),
    ("The course of true love never did run", [" fast", " long", " smooth", " dry"], 2),
    ("If music be the food of love, play", [" it", " now", " loud", " on"], 3),
    ("Double, double toil and trouble; Fire burn and cauldron", [" bubble", " boil", " burn", " trouble"], 0),
    ("Shall I compare thee to a summer's", [" night", " day", " rose", " sun"], 1),
    ("Something is rotten in the state of", [" England", " Scotland", " Denmark", " Rome"], 2),
    ("The quality of mercy is not", [" given", " free", " known", " strained"], 3),
    (
        "that which we call a rose By any other name would smell as",
        [" sweet", " fair", " foul", " strong"],
        0,
    ),
    ("Is this a dagger which I see before", [" thee", " me", " him", " us"], 1),
    ("Alas, poor Yorick! I knew him,", [" Hamlet", " Laertes", " Horatio", " father"], 2),
    ("Good night, good night! parting is such sweet", [" pain", " joy", " grief", " sorrow"], 3),
    ("We few, we happy few, we band of", [" brothers", " soldiers", " kings", " men"], 0),
    ("Cry 'Havoc,' and let slip the dogs of", [" hell", " war", " peace", " death"], 1),
    ("Brevity is the soul of", [" wisdom", " truth", " wit", " love"], 2),
    ("This above all: to thine own self be", [" kind", " good", " just", " true"], 3),
    ("Though this be madness, yet there is", [" method", " reason", " sense", " truth"], 0),
    ("Lord, what fools these mortals", [" are", " be", " seem", " were"], 1),
    ("Uneasy lies the head that wears a", [" hat", " helmet", " crown", " wreath"], 2),
    ("Frailty, thy name is", [" man", " love", " folly", " woman"], 3),
    ("Once more unto the breach, dear friends, once", [" more", " again", " now", " here"], 0),
    ("Now cracks a noble heart. Good night, sweet", [" king", " prince", " lord", " friend"], 1),
    (
        "How sharper than a serpent's tooth it is To have a thankless",
        [" friend", " wife", " child", " king"],
        2,
    ),
    (
        "There are more things in heaven and earth, Horatio, Than are dreamt of in your",
        [" dreams", " heart", " books", " philosophy"],
        3,
    ),
    ("Beware the ides of", [" March", " April", " June", " May"], 0),
    ("The better part of valour is", [" courage", " discretion", " wisdom", " honour"], 1),
    ("All that glisters is not", [" silver", " true", " gold", " fair"], 2),
    ("Hell is empty, And all the devils are", [" there", " gone", " free", " here"], 3),
    ("A plague o' both your", [" houses", " families", " heads", " lands"], 0),
    ("Two households, both alike in", [" honour", " dignity", " wealth", " fortune"], 1),
    ("I must be cruel, only to be", [" cruel", " just", " kind", " good"], 2),
    ("Out, out, brief", [" life", " light", " flame", " candle"], 3),
    (
        "The play's the thing Wherein I'll catch the conscience of the",
        [" king", " queen", " court", " prince"],
        0,
    ),
    ("O, what a rogue and peasant", [" knave", " slave", " fool", " wretch"], 1),
    ("Et tu,", [" Cassius", " Caesar", " Brute", " Antony"], 2),
    ("What a piece of work is a", [" woman", " king", " god", " man"], 3),
]

BASICS = [
    ("What is the capital of France?", ["Paris", "London", "Rome", "Berlin"], 0),
    ("What is 7 + 5?", ["11", "12", "13", "14"], 1),
    ("Which animal says 'moo'?", ["A dog", "A cat", "A cow", "A duck"], 2),
    ("How many days are in a week?", ["Five", "Six", "Eight", "Seven"], 3),
    ("What color is the sky on a clear day?", ["Blue", "Green", "Red", "Yellow"], 0),
    ("What do bees make?", ["Milk", "Honey", "Silk", "Wool"], 1),
    ("What is 9 times 3?", ["21", "24", "27", "30"], 2),
    ("Which planet do we live on?", ["Mars", "Venus", "Jupiter", "Earth"], 3),
    ("What is frozen water called?", ["Ice", "Steam", "Sand", "Glass"], 0),
    ("How many legs does a spider have?", ["Six", "Eight", "Four", "Ten"], 1),
    ("What is the opposite of hot?", ["Warm", "Wet", "Cold", "Loud"], 2),
    ("Which is the largest ocean on Earth?", ["The Atlantic", "The Indian", "The Arctic", "The Pacific"], 3),
    ("What do plants need from the sun to grow?", ["Light", "Sound", "Wind", "Salt"], 0),
    ("What is 100 minus 1?", ["98", "99", "101", "90"], 1),
    ("In which season do leaves usually fall from trees?", ["Spring", "Summer", "Autumn", "Winter"], 2),
    ("What is the capital of Japan?", ["Beijing", "Seoul", "Bangkok", "Tokyo"], 3),
    ("Which of these is a fruit?", ["An apple", "A carrot", "A potato", "An onion"], 0),
    ("How many hours are in a day?", ["12", "24", "36", "48"], 1),
    ("What gas do people need to breathe to stay alive?", ["Helium", "Carbon dioxide", "Oxygen", "Neon"], 2),
    (
        "Who wrote the play Hamlet?",
        ["Charles Dickens", "Jane Austen", "Mark Twain", "William Shakespeare"],
        3,
    ),
    ("What is 6 divided by 2?", ["3", "2", "4", "12"], 0),
    (
        "Which animal is known as the king of the jungle?",
        ["The tiger", "The lion", "The bear", "The wolf"],
        1,
    ),
    ("What do you use to write on a blackboard?", ["A brush", "A spoon", "Chalk", "A key"], 2),
    ("How many months are in a year?", ["Ten", "Eleven", "Thirteen", "Twelve"], 3),
    ("What is the boiling point of water at sea level in degrees Celsius?", ["100", "50", "0", "212"], 0),
    ("Which shape has three sides?", ["A square", "A triangle", "A circle", "A hexagon"], 1),
    ("What is the largest planet in our solar system?", ["Earth", "Mars", "Jupiter", "Mercury"], 2),
    ("Which sense do we use our ears for?", ["Sight", "Taste", "Smell", "Hearing"], 3),
    ("What is 15 + 15?", ["30", "25", "35", "20"], 0),
    ("What do caterpillars turn into?", ["Bees", "Butterflies", "Spiders", "Birds"], 1),
    ("Which continent is Egypt in?", ["Asia", "Europe", "Africa", "South America"], 2),
    ("What is the main language spoken in Brazil?", ["Spanish", "French", "English", "Portuguese"], 3),
    ("Which of these is used to cut paper?", ["Scissors", "A hammer", "A fork", "A pillow"], 0),
    ("How many minutes are in an hour?", ["100", "60", "30", "24"], 1),
    ("What is the color of a ripe banana?", ["Blue", "Purple", "Yellow", "Black"], 2),
    ("Which instrument has black and white keys?", ["A drum", "A flute", "A violin", "A piano"], 3),
    ("What is 8 times 8?", ["64", "56", "72", "48"], 0),
    ("Where does a fish live?", ["In a tree", "In water", "In the sky", "In sand"], 1),
    ("What is the capital of Italy?", ["Madrid", "Athens", "Rome", "Vienna"], 2),
    ("What is the first letter of the English alphabet?", ["Z", "B", "C", "A"], 3),
]

# name -> (items, style): "cloze" scores the choice as the continuation of the context text;
# "question" asks the question (as a user turn for chat models) and scores the choice as the answer
BUILTIN_MC: dict[str, tuple[list[tuple[str, list[str], int]], str]] = {
    "shakespeare": (SHAKESPEARE, "cloze"),
    "basics": (BASICS, "question"),
}
