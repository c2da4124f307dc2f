#!/usr/bin/env python3
"""Generate the small built-in sample corpus in `zer02llm/sample_data/`.

The corpus lets `python -m zer02llm.train` run with no arguments on a fresh clone. Every document
is produced here from templates and word lists written for this project, so the text is original
and free to use under the project's licence. 60% of the documents are English and 40% are
Simplified Chinese (languages are dealt in shuffled blocks of three English and two Chinese). The files use minimind's pretrain format: one JSON object per line,
`{"text": "..."}`, UTF-8, with non-ASCII characters written as they are (not escaped).

The output depends only on `--seed` (and the sizes). The training and validation files are drawn
from separate random streams, and a validation document that also appears in the training file
is left out, so the two files share no document.

    python scripts/make_sample_corpus.py                 # the shipped files (seed 0)
    python scripts/make_sample_corpus.py --train-kb 50 --val-kb 5 --out-dir /tmp/tiny

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Callable

REPO_DIR = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_DIR / "zer02llm" / "sample_data"
LANGUAGE_BLOCK = ["en", "en", "en", "zh", "zh"]  # dealt in shuffled blocks: 60% English, 40% Chinese
MIN_SENTENCES, MAX_SENTENCES = 2, 8

# --------------------------------------------------------------------------------------------
# Word lists. Each entry carries its English and Chinese forms so that both languages draw on
# the same small world (the same animals, places, colours and days).
# --------------------------------------------------------------------------------------------

EN_NAMES = [
    ("Tom", "m"), ("Anna", "f"), ("Lily", "f"), ("Sam", "m"), ("Ben", "m"), ("Mia", "f"),
    ("Leo", "m"), ("Emma", "f"), ("Max", "m"), ("Zoe", "f"), ("Jack", "m"), ("Nora", "f"),
    ("Omar", "m"), ("Ruby", "f"), ("Finn", "m"), ("Ivy", "f"), ("Hugo", "m"), ("Lucy", "f"),
    ("Ravi", "m"), ("Mei", "f"), ("Oscar", "m"), ("Grace", "f"), ("Noah", "m"), ("Ella", "f"),
    ("Adam", "m"), ("Sara", "f"), ("Luke", "m"), ("Rosa", "f"), ("Kai", "m"), ("Hana", "f"),
]
ZH_NAMES = [
    ("小明", "m"), ("小红", "f"), ("小刚", "m"), ("小丽", "f"), ("小华", "m"), ("小芳", "f"),
    ("小龙", "m"), ("小雨", "f"), ("小军", "m"), ("乐乐", "f"), ("明明", "m"), ("小美", "f"),
    ("丁丁", "m"), ("小燕", "f"), ("阿强", "m"), ("小静", "f"), ("小宇", "m"), ("小兰", "f"),
    ("小杰", "m"), ("小月", "f"), ("小东", "m"), ("小梅", "f"), ("小林", "m"), ("小雪", "f"),
]
EN_PRONOUNS = {"m": ("he", "him", "his"), "f": ("she", "her", "her")}
ZH_PRONOUNS = {"m": "他", "f": "她"}

# key: (English, Chinese)
COLOURS = {
    "red": ("red", "红色"), "blue": ("blue", "蓝色"), "green": ("green", "绿色"),
    "yellow": ("yellow", "黄色"), "white": ("white", "白色"), "black": ("black", "黑色"),
    "brown": ("brown", "棕色"), "orange": ("orange", "橙色"), "purple": ("purple", "紫色"),
    "pink": ("pink", "粉色"), "grey": ("grey", "灰色"),
}

# Animals: English singular and plural, number of legs (None: left out of leg sums), what it
# does when it makes a sound and when it leaves, the colours it plausibly has, and the Chinese
# name, measure word, sound and leaving phrases.
ANIMALS = {
    "dog": dict(en="dog", en_pl="dogs", legs=4, en_sound="barked happily", en_away="ran away",
                colours=["brown", "black", "white", "yellow", "grey"],
                zh="狗", mw="只", zh_sound="汪汪地叫了起来", zh_away="跑开了"),
    "cat": dict(en="cat", en_pl="cats", legs=4, en_sound="meowed softly", en_away="ran away",
                colours=["black", "white", "grey", "orange", "brown"],
                zh="猫", mw="只", zh_sound="喵喵地叫了起来", zh_away="跑开了"),
    "rabbit": dict(en="rabbit", en_pl="rabbits", legs=4, en_sound=None, en_away="hopped away",
                   colours=["white", "brown", "grey"],
                   zh="兔子", mw="只", zh_sound=None, zh_away="蹦蹦跳跳地跑开了"),
    "duck": dict(en="duck", en_pl="ducks", legs=2, en_sound="quacked loudly", en_away="waddled away",
                 colours=["white", "yellow", "brown"],
                 zh="鸭子", mw="只", zh_sound="嘎嘎地叫了起来", zh_away="摇摇摆摆地走开了"),
    "bird": dict(en="bird", en_pl="birds", legs=2, en_sound="sang a short song", en_away="flew away",
                 colours=["blue", "red", "yellow", "green", "brown"],
                 zh="鸟", mw="只", zh_sound="叽叽喳喳地唱起了歌", zh_away="飞走了"),
    "owl": dict(en="owl", en_pl="owls", legs=2, en_sound="hooted twice", en_away="flew away",
                colours=["brown", "grey", "white"],
                zh="猫头鹰", mw="只", zh_sound="咕咕地叫了两声", zh_away="飞走了"),
    "frog": dict(en="frog", en_pl="frogs", legs=4, en_sound="croaked", en_away="jumped into the water",
                 colours=["green", "brown"],
                 zh="青蛙", mw="只", zh_sound="呱呱地叫了起来", zh_away="跳进了水里"),
    "turtle": dict(en="turtle", en_pl="turtles", legs=4, en_sound=None, en_away="walked slowly away",
                   colours=["green", "brown"],
                   zh="乌龟", mw="只", zh_sound=None, zh_away="慢慢地爬走了"),
    "squirrel": dict(en="squirrel", en_pl="squirrels", legs=4, en_sound="chattered", en_away="ran up a tree",
                     colours=["red", "grey", "brown"],
                     zh="松鼠", mw="只", zh_sound="吱吱地叫了起来", zh_away="爬到了树上"),
    "fox": dict(en="fox", en_pl="foxes", legs=4, en_sound=None, en_away="ran into the bushes",
                colours=["red", "orange"],
                zh="狐狸", mw="只", zh_sound=None, zh_away="钻进了树丛里"),
    "deer": dict(en="deer", en_pl="deer", legs=4, en_sound=None, en_away="ran into the trees",
                 colours=["brown"],
                 zh="鹿", mw="只", zh_sound=None, zh_away="跑进了树林"),
    "cow": dict(en="cow", en_pl="cows", legs=4, en_sound="mooed", en_away="walked away",
                colours=["brown", "black", "white"],
                zh="牛", mw="头", zh_sound="哞哞地叫了起来", zh_away="慢慢地走开了"),
    "horse": dict(en="horse", en_pl="horses", legs=4, en_sound="neighed", en_away="trotted away",
                  colours=["brown", "black", "white", "grey"],
                  zh="马", mw="匹", zh_sound="发出了一声长长的嘶鸣", zh_away="跑开了"),
    "sheep": dict(en="sheep", en_pl="sheep", legs=4, en_sound="said baa", en_away="walked away",
                  colours=["white", "black"],
                  zh="羊", mw="只", zh_sound="咩咩地叫了起来", zh_away="走开了"),
    "goat": dict(en="goat", en_pl="goats", legs=4, en_sound="bleated", en_away="walked away",
                 colours=["white", "brown", "black"],
                 zh="山羊", mw="只", zh_sound="咩咩地叫了起来", zh_away="走开了"),
    "pig": dict(en="pig", en_pl="pigs", legs=4, en_sound="grunted", en_away="ran away",
                colours=["pink"],
                zh="猪", mw="头", zh_sound="哼哼地叫了起来", zh_away="跑开了"),
    "hen": dict(en="hen", en_pl="hens", legs=2, en_sound="clucked", en_away="ran away",
                colours=["brown", "white", "black"],
                zh="母鸡", mw="只", zh_sound="咯咯地叫了起来", zh_away="跑开了"),
    "mouse": dict(en="mouse", en_pl="mice", legs=4, en_sound="squeaked", en_away="ran into a small hole",
                  colours=["grey", "brown", "white"],
                  zh="老鼠", mw="只", zh_sound="吱吱地叫了起来", zh_away="钻进了一个小洞"),
    "crab": dict(en="crab", en_pl="crabs", legs=None, en_sound=None, en_away="ran sideways into the sea",
                 colours=["red", "orange", "brown"],
                 zh="螃蟹", mw="只", zh_sound=None, zh_away="横着爬进了海里"),
}
FARM_ANIMALS = ["cow", "horse", "sheep", "goat", "pig", "hen", "duck", "dog", "cat"]

# Outdoor places for the stories: how one gets there, where an animal can be, which animals fit.
PLACES = {
    "park": dict(en_go="went to the park", zh_go="去了公园",
                 en_spots=["under a big tree", "behind a bench", "near the pond", "on the grass"],
                 zh_spots=["一棵大树下", "长椅后面", "池塘边", "草地上"],
                 animals=["dog", "cat", "duck", "bird", "squirrel", "rabbit", "frog"]),
    "garden": dict(en_go="went out into the garden", zh_go="来到了花园里",
                   en_spots=["among the flowers", "under a bush", "next to the fence",
                             "beside the vegetable beds"],
                   zh_spots=["花丛中", "灌木下面", "篱笆旁边", "菜地旁边"],
                   animals=["cat", "bird", "rabbit", "frog", "hen", "squirrel", "mouse", "turtle", "dog"]),
    "forest": dict(en_go="walked into the forest", zh_go="走进了森林",
                   en_spots=["behind a tall tree", "near a small stream", "under some ferns",
                             "on a fallen log"],
                   zh_spots=["一棵高高的树后面", "小溪边", "蕨草下面", "一根倒下的木头上"],
                   animals=["fox", "owl", "squirrel", "deer", "rabbit", "bird", "frog"]),
    "beach": dict(en_go="went to the beach", zh_go="去了海边",
                  en_spots=["near the water", "behind a sandcastle", "next to a big rock",
                            "under an old boat"],
                  zh_spots=["水边", "沙堡后面", "一块大石头旁边", "一条旧船下面"],
                  animals=["crab", "dog", "bird", "turtle"]),
    "farm": dict(en_go="visited the farm", zh_go="去了农场",
                 en_spots=["in the barn", "next to the fence", "near the hay", "by the gate"],
                 zh_spots=["谷仓里", "栅栏旁边", "干草堆旁边", "大门口"],
                 animals=FARM_ANIMALS),
    "river": dict(en_go="walked down to the river", zh_go="来到了河边",
                  en_spots=["near the water", "under a bridge", "on a flat stone", "among the reeds"],
                  zh_spots=["水边", "桥下", "一块平平的石头上", "芦苇丛中"],
                  animals=["duck", "frog", "turtle", "bird"]),
    "hill": dict(en_go="climbed the hill", zh_go="爬上了小山",
                 en_spots=["at the top of the hill", "behind a rock", "in the long grass"],
                 zh_spots=["山顶上", "一块石头后面", "长长的草丛里"],
                 animals=["goat", "sheep", "rabbit", "bird", "fox", "deer"]),
}

# Weather: English adjective, story details, Chinese details, Chinese diary phrase and diary label.
WEATHER = {
    "sunny": dict(en="sunny", en_details=["The sun was bright and the sky was blue.",
                                          "It was warm, and there were no clouds in the sky."],
                  zh_details=["天气很好，阳光明媚。", "天空很蓝，一朵云也没有。"],
                  zh_diary="天气晴朗", zh_label="晴"),
    "rainy": dict(en="rainy", en_details=["It was raining, so {p} took {poss} umbrella.",
                                          "A light rain was falling."],
                  zh_details=["外面下着小雨，{p}带上了雨伞。", "细细的小雨不停地下着。"],
                  zh_diary="外面一直在下雨", zh_label="雨"),
    "windy": dict(en="windy", en_details=["The wind was strong, and leaves were flying through the air.",
                                          "The wind blew {poss} hat off twice."],
                  zh_details=["风很大，树叶在空中飞舞。", "风把{p}的帽子吹掉了两次。"],
                  zh_diary="风很大", zh_label="大风"),
    "cloudy": dict(en="cloudy", en_details=["Grey clouds covered the sky.",
                                            "The sky was grey, but it did not rain."],
                   zh_details=["天上有很多灰色的云。", "天阴阴的，但是没有下雨。"],
                   zh_diary="天阴沉沉的", zh_label="阴"),
    "snowy": dict(en="snowy", en_details=["Snow covered the ground like a white blanket.",
                                          "{P} wore a warm coat and a scarf."],
                  zh_details=["地上积了一层厚厚的雪。", "{p}穿上了暖和的外套，戴上了围巾。"],
                  zh_diary="外面下着雪", zh_label="雪"),
    "foggy": dict(en="foggy", en_details=["The fog was so thick that {p} could not see very far.",
                                          "Everything was hidden in a soft white fog."],
                  zh_details=["雾很大，{p}看不清远处的东西。", "到处都是白白的雾。"],
                  zh_diary="早上有很大的雾", zh_label="雾"),
}

EN_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
ZH_DAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
EN_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
             "September", "October", "November", "December"]
TIMES = [("morning", "早上"), ("afternoon", "下午"), ("evening", "傍晚")]
RELATIVES = [("mother", "妈妈"), ("father", "爸爸"), ("grandmother", "奶奶"),
             ("grandfather", "爷爷"), ("sister", "姐姐"), ("brother", "哥哥")]
ENCOUNTER_FEELINGS = [("happy", "很开心"), ("excited", "很兴奋"), ("surprised", "很惊讶"),
                      ("curious", "很好奇"), ("delighted", "非常高兴")]

# Things a person can own, with Chinese measure words.
OBJECTS = [("hat", "顶", "帽子"), ("ball", "个", "皮球"), ("kite", "只", "风筝"),
           ("bicycle", "辆", "自行车"), ("umbrella", "把", "雨伞"), ("cup", "个", "杯子"),
           ("scarf", "条", "围巾"), ("bag", "个", "书包"), ("pencil", "支", "铅笔"),
           ("box", "个", "盒子"), ("coat", "件", "外套"), ("lamp", "盏", "台灯")]

# Countable foods: English singular, plural, Chinese measure word, Chinese name.
FOODS = [("apple", "apples", "个", "苹果"), ("pear", "pears", "个", "梨"),
         ("orange", "oranges", "个", "橙子"), ("egg", "eggs", "个", "鸡蛋"),
         ("banana", "bananas", "根", "香蕉"), ("carrot", "carrots", "根", "胡萝卜"),
         ("cucumber", "cucumbers", "根", "黄瓜"), ("cookie", "cookies", "块", "饼干"),
         ("peach", "peaches", "个", "桃子"), ("lemon", "lemons", "个", "柠檬"),
         ("watermelon", "watermelons", "个", "西瓜")]
# Countable things that are given away rather than eaten.
THINGS = [("pencil", "pencils", "支", "铅笔"), ("sticker", "stickers", "张", "贴纸"),
          ("marble", "marbles", "颗", "弹珠"), ("book", "books", "本", "书"),
          ("balloon", "balloons", "个", "气球"), ("stamp", "stamps", "张", "邮票")]

# Activities: English past tense, English base form, Chinese past, Chinese plain form.
SOLO_ACTIVITIES = [
    ("read a book about {animal_pl}", "read a book about {animal_pl}",
     "看了一本关于{zh_animal}的书", "看一本关于{zh_animal}的书"),
    ("drew a picture of {a_animal}", "draw a picture of {a_animal}",
     "画了一幅{zh_animal}的画", "画一幅{zh_animal}的画"),
    ("baked cookies with my mother", "bake cookies with my mother",
     "和妈妈一起做了饼干", "和妈妈一起做饼干"),
    ("cleaned my room", "clean my room", "打扫了自己的房间", "打扫房间"),
    ("visited my grandmother", "visit my grandmother", "去看了奶奶", "去看奶奶"),
    ("wrote a letter to my uncle", "write a letter to my uncle", "给叔叔写了一封信", "给叔叔写信"),
    ("watered the flowers", "water the flowers", "给花浇了水", "给花浇水"),
    ("helped my father cook dinner", "help my father cook dinner", "帮爸爸做了晚饭", "帮爸爸做晚饭"),
    ("practised the piano", "practise the piano", "练习了弹钢琴", "练习弹钢琴"),
    ("made a paper boat", "make a paper boat", "折了一只纸船", "折一只纸船"),
]
SHARED_ACTIVITIES = [
    ("played football", "play football", "踢了足球", "踢足球"),
    ("flew a kite", "fly a kite", "放了风筝", "放风筝"),
    ("went for a bicycle ride", "go for a bicycle ride", "骑了自行车", "骑自行车"),
    ("went swimming", "go swimming", "去游了泳", "去游泳"),
    ("sang songs", "sing songs", "唱了几首歌", "唱歌"),
    ("built a tower of blocks", "build a tower of blocks", "用积木搭了一座高塔", "用积木搭高塔"),
    ("played hide and seek", "play hide and seek", "玩了捉迷藏", "玩捉迷藏"),
    ("looked for shells on the beach", "look for shells on the beach", "去海边捡了贝壳", "去海边捡贝壳"),
]
# Weekly habits: English third person present, Chinese.
HABITS = [("goes to the library", "去图书馆看书"), ("visits {poss} grandmother", "去看奶奶"),
          ("helps {poss} father in the garden", "帮爸爸在花园里干活"), ("plays football", "踢足球"),
          ("goes swimming", "去游泳"), ("bakes bread with {poss} mother", "和妈妈一起做面包"),
          ("has a piano lesson", "去上钢琴课"), ("cleans {poss} room", "打扫自己的房间")]

# Facts that are true, in both languages.
COLOUR_FACTS = [
    ("On a clear day, the sky is blue.", "晴天的时候，天空是蓝色的。"),
    ("Grass is green.", "草是绿色的。"), ("Snow is white.", "雪是白色的。"),
    ("Ripe bananas are yellow.", "熟了的香蕉是黄色的。"),
    ("Strawberries are red.", "草莓是红色的。"), ("Coal is black.", "煤是黑色的。"),
    ("Carrots are orange.", "胡萝卜是橙色的。"), ("Chocolate is brown.", "巧克力是棕色的。"),
    ("Some grapes are green and some are purple.", "葡萄有绿色的，也有紫色的。"),
    ("Lemons are yellow.", "柠檬是黄色的。"), ("Most leaves are green in summer.", "夏天，大多数树叶是绿色的。"),
    ("Many leaves turn yellow or red in autumn.", "秋天，很多树叶会变成黄色或红色。"),
]
COLOUR_MIXES = [
    ("Blue and yellow make green.", "蓝色和黄色混在一起会变成绿色。"),
    ("Red and yellow make orange.", "红色和黄色混在一起会变成橙色。"),
    ("Red and blue make purple.", "红色和蓝色混在一起会变成紫色。"),
    ("Red and white make pink.", "红色和白色混在一起会变成粉色。"),
    ("Black and white make grey.", "黑色和白色混在一起会变成灰色。"),
]
ANIMAL_FACTS = [
    ("A dog says woof.", "小狗汪汪叫。"), ("A cat says meow.", "小猫喵喵叫。"),
    ("A cow says moo.", "牛哞哞叫。"), ("A duck says quack.", "鸭子嘎嘎叫。"),
    ("A sheep says baa.", "小羊咩咩叫。"), ("Birds can fly.", "鸟会飞。"),
    ("Fish can swim.", "鱼会游泳。"), ("Frogs can jump very far.", "青蛙能跳得很远。"),
    ("Ducks can swim and fly.", "鸭子会游泳，也会飞。"), ("A spider has eight legs.", "蜘蛛有八条腿。"),
    ("An insect has six legs.", "昆虫有六条腿。"), ("A bird has two legs and two wings.", "鸟有两条腿和两只翅膀。"),
    ("Bees make honey.", "蜜蜂会酿蜂蜜。"), ("Cows give us milk.", "奶牛给我们提供牛奶。"),
    ("Hens lay eggs.", "母鸡会下蛋。"), ("Rabbits like to eat carrots.", "兔子喜欢吃胡萝卜。"),
    ("Owls are awake at night.", "猫头鹰在夜里活动。"), ("A turtle carries its shell on its back.", "乌龟背着自己的壳。"),
    ("Squirrels hide nuts for the winter.", "松鼠会把坚果藏起来过冬。"),
    ("Fish live in water.", "鱼生活在水里。"),
]

# Dialogue destinations: English place, English reason, Chinese place, Chinese reason.
DESTINATIONS = [
    ("the library", "I want to borrow a book about {animal_pl}.", "图书馆", "我想借一本关于{zh_animal}的书"),
    ("the market", "I need to buy some {food_pl}.", "市场", "我要去买一些{zh_food}"),
    ("the park", "I want to fly my {colour} kite.", "公园", "我想去放我的{zh_colour}风筝"),
    ("the beach", "I want to look for shells.", "海边", "我想去捡贝壳"),
    ("the river", "I want to watch the ducks.", "河边", "我想去看鸭子"),
    ("school", "I want to ask my teacher a question.", "学校", "我想去问老师一个问题"),
    ("the farm", "I am going to help my uncle feed the {farm_pl}.", "农场", "我要去帮叔叔喂{zh_farm}"),
]
COUNTING_SCENES = [  # animal, English location, Chinese location
    ("duck", "in the pond", "池塘里"), ("bird", "on the roof", "屋顶上"),
    ("sheep", "in the field", "草地上"), ("cow", "in the field", "草地上"),
    ("hen", "in the yard", "院子里"), ("rabbit", "in the garden", "花园里"),
    ("frog", "by the pond", "池塘边"), ("goat", "on the hill", "山坡上"),
]

EN_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
           "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
           "eighteen", "nineteen"]
EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ZH_DIGITS = "零一二三四五六七八九"


# --------------------------------------------------------------------------------------------
# Small language helpers.
# --------------------------------------------------------------------------------------------

def en_num(n: int) -> str:
    """English words for 0..100."""
    if n < 20:
        return EN_ONES[n]
    if n == 100:
        return "one hundred"
    tens, ones = divmod(n, 10)
    return EN_TENS[tens] + ("-" + EN_ONES[ones] if ones else "")


def zh_num(n: int) -> str:
    """Chinese numerals for 0..100, as used in arithmetic (2 is 二)."""
    if n < 10:
        return ZH_DIGITS[n]
    if n == 100:
        return "一百"
    tens, ones = divmod(n, 10)
    head = "十" if tens == 1 else ZH_DIGITS[tens] + "十"
    return head + (ZH_DIGITS[ones] if ones else "")


def zh_count(n: int) -> str:
    """Chinese numerals before a measure word: 2 is 两 (两只), 12 stays 十二."""
    return "两" if n == 2 else zh_num(n)


def a_an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def en_count(n: int, singular: str, plural: str) -> str:
    return f"{en_num(n)} {singular if n == 1 else plural}"


class Doc:
    """A document built sentence by sentence, in paragraphs; counts its sentences."""

    def __init__(self, lang: str):
        self.sep = " " if lang == "en" else ""
        self.paragraphs: list[list[str]] = [[]]
        self.sentences = 0

    def s(self, *sentences: str) -> None:
        for sentence in sentences:
            self.paragraphs[-1].append(sentence)
            self.sentences += 1

    def line(self, text: str) -> None:
        """A line that is not counted as a sentence (a diary heading), on its own."""
        self.new_paragraph()
        self.paragraphs[-1].append(text)
        self.new_paragraph()

    def new_paragraph(self) -> None:
        if self.paragraphs[-1]:
            self.paragraphs.append([])

    def text(self) -> str:
        return "\n".join(self.sep.join(p) for p in self.paragraphs if p)


def pick_person(rng: random.Random, lang: str, exclude: str | None = None) -> tuple[str, str]:
    names = EN_NAMES if lang == "en" else ZH_NAMES
    while True:
        name, gender = rng.choice(names)
        if name != exclude:
            return name, gender


def pick_animal(rng: random.Random, keys: list[str] | None = None) -> tuple[dict, str, str]:
    key = rng.choice(keys or list(ANIMALS))
    animal = ANIMALS[key]
    return animal, key, rng.choice(animal["colours"])


# --------------------------------------------------------------------------------------------
# Document types. Each has an English and a Chinese generator with the same shape.
# --------------------------------------------------------------------------------------------

def en_story(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p, obj, poss = EN_PRONOUNS[g]
    place = PLACES[rng.choice(list(PLACES))]
    animal, _, colour = pick_animal(rng, place["animals"])
    weather = WEATHER[rng.choice(list(WEATHER))]
    time_en = rng.choice(TIMES)[0]
    if rng.random() < 0.5:
        d.s(f"On {rng.choice(EN_DAYS)} {time_en}, {name} {place['en_go']}.")
    else:
        d.s(f"One {weather['en']} {time_en}, {name} {place['en_go']}.")
    d.s(rng.choice(weather["en_details"]).format(p=p, P=cap(p), poss=poss))
    size = rng.choice(["little", "big", "small", "young"])
    a = animal["en"]
    d.s(f"{cap(p)} saw {a_an(size)} {COLOURS[colour][0]} {a} {rng.choice(place['en_spots'])}.")
    if rng.random() < 0.6:
        doing = rng.choice(["sleeping", "looking around", "eating something", "sitting very still",
                            f"watching {name}"])
        d.s(f"The {a} was {doing}.")
    if rng.random() < 0.6:
        d.s(f"{name} felt {rng.choice(ENCOUNTER_FEELINGS)[0]}.")
    endings = [f"{cap(p)} sat down quietly and watched the {a} for a long time.",
               f"When {p} came closer, the {a} {animal['en_away']}.",
               f"{cap(p)} drew a picture of the {a} in {poss} notebook."]
    if animal["en_sound"]:
        endings.append(f"{cap(p)} said hello, and the {a} {animal['en_sound']}.")
    d.s(rng.choice(endings))
    if rng.random() < 0.5:
        d.new_paragraph()
        rel = rng.choice(RELATIVES)[0]
        d.s(f"When {name} got home, {p} told {poss} {rel} about the {COLOURS[colour][0]} {a}.")
        more = [f"{cap(poss)} {rel} smiled and said, \"What a lovely day you had!\"",
                f"That night, {name} dreamed about the {a}.",
                f"{name} hoped to see the {a} again soon."]
        if d.sentences < MAX_SENTENCES:
            d.s(rng.choice(more))
    return d


def zh_story(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    place = PLACES[rng.choice(list(PLACES))]
    animal, _, colour = pick_animal(rng, place["animals"])
    weather = WEATHER[rng.choice(list(WEATHER))]
    time_zh = rng.choice(TIMES)[1]
    d.s(f"{rng.choice(ZH_DAYS)}{time_zh}，{name}{place['zh_go']}。")
    d.s(rng.choice(weather["zh_details"]).format(p=p))
    size = rng.choice(["小", "大"])
    a = size + animal["zh"]
    mw = animal["mw"]
    d.s(f"{p}在{rng.choice(place['zh_spots'])}看见了一{mw}{COLOURS[colour][1]}的{a}。")
    if rng.random() < 0.6:
        doing = rng.choice(["正在睡觉", "正在东张西望", "正在吃东西", "一动不动地待着", f"正看着{name}"])
        d.s(f"{a}{doing}。")
    if rng.random() < 0.6:
        d.s(f"{name}觉得{rng.choice(ENCOUNTER_FEELINGS)[1]}。")
    endings = [f"{p}安静地坐下来，看了{a}很久。",
               f"{p}走近的时候，{a}{animal['zh_away']}。",
               f"{p}在本子上画了一幅{a}的画。"]
    if animal["zh_sound"]:
        endings.append(f"{p}跟{a}打了个招呼，{a}{animal['zh_sound']}。")
    d.s(rng.choice(endings))
    if rng.random() < 0.5:
        d.new_paragraph()
        rel = rng.choice(RELATIVES)[1]
        d.s(f"回到家以后，{name}把看见{a}的事告诉了{rel}。")
        more = [f"{rel}笑着说：“你今天过得真开心！”",
                f"那天晚上，{name}梦见了那{mw}{a}。",
                f"{name}希望很快能再见到那{mw}{a}。"]
        d.s(rng.choice(more))
    return d


def _en_fact(rng: random.Random, words: bool) -> str:
    op = rng.choice(["plus", "minus", "times"])
    if op == "plus":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = a + b
    elif op == "minus":
        a = rng.randint(2, 30)
        b = rng.randint(1, a)
        c = a - b
    else:
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        c = a * b
    fmt = en_num if words else str
    verb = rng.choice(["is", "equals"])
    return cap(f"{fmt(a)} {op} {fmt(b)} {verb} {fmt(c)}.")


def _zh_fact(rng: random.Random, hanzi: bool) -> str:
    op = rng.choice(["加", "减", "乘以"])
    if op == "加":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        c = a + b
    elif op == "减":
        a = rng.randint(2, 30)
        b = rng.randint(1, a)
        c = a - b
    else:
        a, b = rng.randint(2, 10), rng.randint(2, 10)
        c = a * b
    fmt = zh_num if hanzi else str
    return f"{fmt(a)}{op}{fmt(b)}等于{fmt(c)}。"


def _en_word_problem(rng: random.Random, d: Doc) -> None:
    name, g = pick_person(rng, "en")
    p, obj, poss = EN_PRONOUNS[g]
    food = rng.random() < 0.5
    sing, plur, _, _ = rng.choice(FOODS if food else THINGS)
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"ate {en_num(b)} of them"
        else:
            act = f"gave {en_num(b)} of them to {pick_person(rng, 'en', name)[0]}"
        d.s(f"{name} had {en_count(a, sing, plur)}.")
        d.s(f"{cap(p)} {act}.")
        d.s(f"Now {p} has {en_count(a - b, sing, plur)} left.")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[0]
        d.s(f"{name} had {en_count(a, sing, plur)}.")
        d.s(f"{cap(poss)} {rel} gave {obj} {en_num(b)} more.")
        d.s(f"Now {p} has {en_count(a + b, sing, plur)}.")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        among = "between" if k == 2 else "among"
        d.s(f"{name} has {en_count(each * k, sing, plur)} and wants to share them equally {among} "
            f"{en_num(k)} friends.")
        d.s(f"Each friend gets {en_count(each, sing, plur)}.")


def _zh_word_problem(rng: random.Random, d: Doc) -> None:
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    food = rng.random() < 0.5
    _, _, mw, item = rng.choice(FOODS if food else THINGS)
    kind = rng.choice(["less", "more", "share"])
    if kind == "less":
        a = rng.randint(3, 15)
        b = rng.randint(1, a - 1)
        if food and rng.random() < 0.5:
            act = f"吃了{zh_count(b)}{mw}"
        else:
            act = f"送给了{pick_person(rng, 'zh', name)[0]}{zh_count(b)}{mw}"
        d.s(f"{name}有{zh_count(a)}{mw}{item}，{p}{act}，还剩下{zh_count(a - b)}{mw}{item}。")
    elif kind == "more":
        a, b = rng.randint(1, 12), rng.randint(1, 8)
        rel = rng.choice(RELATIVES)[1]
        d.s(f"{name}有{zh_count(a)}{mw}{item}。")
        d.s(f"{rel}又给了{p}{zh_count(b)}{mw}，现在{p}一共有{zh_count(a + b)}{mw}{item}。")
    else:
        each, k = rng.randint(1, 5), rng.randint(2, 5)
        d.s(f"{name}有{zh_count(each * k)}{mw}{item}，{p}想平均分给{zh_count(k)}个朋友。")
        d.s(f"每个朋友可以分到{zh_count(each)}{mw}{item}。")


def en_math(rng: random.Random) -> Doc:
    d = Doc("en")
    if rng.random() < 0.4:
        d.s(rng.choice(["Here are some sums.", "Let us practise some arithmetic.",
                        "Numbers are fun to learn."]))
    words = rng.random() < 0.4
    for _ in range(rng.randint(2, 4)):
        d.s(_en_fact(rng, words))
    if rng.random() < 0.6:
        d.new_paragraph()
        _en_word_problem(rng, d)
    return d


def zh_math(rng: random.Random) -> Doc:
    d = Doc("zh")
    if rng.random() < 0.4:
        d.s(rng.choice(["我们来做几道算术题。", "下面是一些简单的算术。", "学数字很有意思。"]))
    hanzi = rng.random() < 0.5
    for _ in range(rng.randint(2, 4)):
        d.s(_zh_fact(rng, hanzi))
    if rng.random() < 0.6:
        d.new_paragraph()
        _zh_word_problem(rng, d)
    return d


def en_legs(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p = EN_PRONOUNS[g][0]
    k1, k2 = rng.sample([k for k in FARM_ANIMALS if ANIMALS[k]["legs"]], 2)
    a1, a2 = ANIMALS[k1], ANIMALS[k2]
    n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
    l1, l2 = n1 * a1["legs"], n2 * a2["legs"]
    d.s(f"{name} visited the farm and saw {en_count(n1, a1['en'], a1['en_pl'])} and "
        f"{en_count(n2, a2['en'], a2['en_pl'])}.")
    d.s(f"Each {a1['en']} has {en_num(a1['legs'])} legs, and each {a2['en']} has {en_num(a2['legs'])} legs.")
    d.s(f"The {a1['en_pl']} have {l1} legs in total, and the {a2['en_pl']} have {l2}.")
    d.s(f"Together, that makes {l1 + l2} legs.")
    if rng.random() < 0.4:
        d.s(f"{cap(p)} counted them twice to be sure.")
    return d


def zh_legs(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    k1, k2 = rng.sample([k for k in FARM_ANIMALS if ANIMALS[k]["legs"]], 2)
    a1, a2 = ANIMALS[k1], ANIMALS[k2]
    n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
    l1, l2 = n1 * a1["legs"], n2 * a2["legs"]
    d.s(f"{name}去了农场，看见了{zh_count(n1)}{a1['mw']}{a1['zh']}和{zh_count(n2)}{a2['mw']}{a2['zh']}。")
    d.s(f"每{a1['mw']}{a1['zh']}有{zh_count(a1['legs'])}条腿，每{a2['mw']}{a2['zh']}有{zh_count(a2['legs'])}条腿。")
    d.s(f"{a1['zh']}一共有{zh_num(l1)}条腿，{a2['zh']}一共有{zh_num(l2)}条腿。")
    d.s(f"加起来一共是{zh_num(l1 + l2)}条腿。")
    if rng.random() < 0.4:
        d.s(f"为了不数错，{p}又数了一遍。")
    return d


def en_counting(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    key, loc_en, _ = rng.choice(COUNTING_SCENES)
    a = ANIMALS[key]
    n = rng.randint(2, 8)
    extra = rng.randint(1, 4)
    d.s(f"{name} counted the {a['en_pl']} {loc_en}.")
    d.s(cap(", ".join(en_num(i) for i in range(1, n + 1))) + ".")
    d.s(f"There were {en_count(n, a['en'], a['en_pl'])}.")
    if rng.random() < 0.7:
        d.s(f"Then {en_num(extra)} more {a['en'] if extra == 1 else a['en_pl']} came, "
            f"so there were {en_count(n + extra, a['en'], a['en_pl'])}.")
    return d


def zh_counting(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    key, _, loc_zh = rng.choice(COUNTING_SCENES)
    a = ANIMALS[key]
    n = rng.randint(2, 8)
    extra = rng.randint(1, 4)
    d.s(f"{name}数了数{loc_zh}的{a['zh']}：" + "、".join(zh_num(i) for i in range(1, n + 1)) + "。")
    d.s(f"一共有{zh_count(n)}{a['mw']}{a['zh']}。")
    if rng.random() < 0.7:
        d.s(f"后来又来了{zh_count(extra)}{a['mw']}，现在有{zh_count(n + extra)}{a['mw']}{a['zh']}了。")
    return d


def en_calendar(rng: random.Random) -> Doc:
    d = Doc("en")
    i = rng.randrange(7)
    day = lambda k: EN_DAYS[(i + k) % 7]  # noqa: E731
    pool = [f"Yesterday was {day(-1)}, and tomorrow will be {day(1)}.",
            f"The day after tomorrow will be {day(2)}.",
            "There are seven days in a week.",
            f"{day(0)} comes after {day(-1)} and before {day(1)}.",
            "Saturday and Sunday are the weekend."]
    name, g = pick_person(rng, "en")
    poss = EN_PRONOUNS[g][2]
    habit = rng.choice(HABITS)[0].format(poss=poss)
    pool.append(f"On {day(0)}s, {name} usually {habit}.")
    m = rng.randrange(12)
    pool.append(f"There are twelve months in a year, and {EN_MONTHS[m]} comes after {EN_MONTHS[m - 1]}.")
    d.s(f"Today is {day(0)}.")
    for sentence in rng.sample(pool, rng.randint(2, 5)):
        d.s(sentence)
    return d


def zh_calendar(rng: random.Random) -> Doc:
    d = Doc("zh")
    i = rng.randrange(7)
    day = lambda k: ZH_DAYS[(i + k) % 7]  # noqa: E731
    pool = [f"昨天是{day(-1)}，明天是{day(1)}。",
            f"后天是{day(2)}。",
            "一个星期有七天。",
            f"{day(-1)}过后是{day(0)}，{day(0)}过后是{day(1)}。",
            "星期六和星期日是周末。"]
    name, _ = pick_person(rng, "zh")
    pool.append(f"每个{day(0)}，{name}都会{rng.choice(HABITS)[1]}。")
    m = rng.randrange(12)
    prev = (m - 1) % 12
    pool.append(f"一年有十二个月，{zh_num(prev + 1)}月过后是{zh_num(m + 1)}月。")
    d.s(f"今天是{day(0)}。")
    for sentence in rng.sample(pool, rng.randint(2, 5)):
        d.s(sentence)
    return d


def en_colours(rng: random.Random) -> Doc:
    d = Doc("en")
    facts = rng.sample(COLOUR_FACTS, 4)
    for en, _ in facts[:rng.randint(1, 3)]:
        d.s(en)
    if rng.random() < 0.6:
        d.s(rng.choice(COLOUR_MIXES)[0])
    if rng.random() < 0.7:
        name, g = pick_person(rng, "en")
        p = EN_PRONOUNS[g][0]
        c1, c2 = rng.sample(list(COLOURS), 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        d.s(f"{name}'s favourite colour is {c1}.")
        d.s(f"{cap(p)} has {a_an(COLOURS[c1][0])} {o1[0]} and {a_an(COLOURS[c2][0])} {o2[0]}.")
    if d.sentences < MIN_SENTENCES:
        d.s(facts[3][0] if rng.random() < 0.5 else "There are many colours in the world.")
    return d


def zh_colours(rng: random.Random) -> Doc:
    d = Doc("zh")
    facts = rng.sample(COLOUR_FACTS, 4)
    for _, zh in facts[:rng.randint(1, 3)]:
        d.s(zh)
    if rng.random() < 0.6:
        d.s(rng.choice(COLOUR_MIXES)[1])
    if rng.random() < 0.7:
        name, g = pick_person(rng, "zh")
        p = ZH_PRONOUNS[g]
        c1, c2 = rng.sample(list(COLOURS), 2)
        o1, o2 = rng.sample(OBJECTS, 2)
        d.s(f"{name}最喜欢的颜色是{COLOURS[c1][1]}。")
        d.s(f"{p}有一{o1[1]}{COLOURS[c1][1]}的{o1[2]}和一{o2[1]}{COLOURS[c2][1]}的{o2[2]}。")
    if d.sentences < MIN_SENTENCES:
        d.s(facts[3][1] if rng.random() < 0.5 else "世界上有很多种颜色。")
    return d


def en_animal_facts(rng: random.Random) -> Doc:
    d = Doc("en")
    if rng.random() < 0.4:
        d.s(rng.choice(["Here are some facts about animals.", "Animals are interesting."]))
    for en, _ in rng.sample(ANIMAL_FACTS, rng.randint(2, 5)):
        d.s(en)
    return d


def zh_animal_facts(rng: random.Random) -> Doc:
    d = Doc("zh")
    if rng.random() < 0.4:
        d.s(rng.choice(["下面是一些关于动物的知识。", "动物真有趣。"]))
    for _, zh in rng.sample(ANIMAL_FACTS, rng.randint(2, 5)):
        d.s(zh)
    return d


def en_shopping(rng: random.Random) -> Doc:
    d = Doc("en")
    name, g = pick_person(rng, "en")
    p = EN_PRONOUNS[g][0]
    (s1, pl1, _, _), (s2, pl2, _, _) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    d.s(f"At the market, {name} bought {en_num(n1)} {pl1} and {en_num(n2)} {pl2}.")
    d.s(f"Each {s1} cost {en_count(c1, 'coin', 'coins')}, and each {s2} cost {en_count(c2, 'coin', 'coins')}.")
    d.s(f"So {p} paid {en_count(n1 * c1, 'coin', 'coins')} for the {pl1} and "
        f"{en_count(n2 * c2, 'coin', 'coins')} for the {pl2}.")
    d.s(f"Altogether, {p} paid {en_count(n1 * c1 + n2 * c2, 'coin', 'coins')}.")
    return d


def zh_shopping(rng: random.Random) -> Doc:
    d = Doc("zh")
    name, g = pick_person(rng, "zh")
    p = ZH_PRONOUNS[g]
    (_, _, m1, f1), (_, _, m2, f2) = rng.sample(FOODS, 2)
    n1, n2 = rng.randint(2, 6), rng.randint(2, 6)
    c1, c2 = rng.randint(1, 5), rng.randint(1, 5)
    d.s(f"{name}在市场上买了{zh_count(n1)}{m1}{f1}和{zh_count(n2)}{m2}{f2}。")
    d.s(f"每{m1}{f1}{zh_count(c1)}元，每{m2}{f2}{zh_count(c2)}元。")
    d.s(f"买{f1}花了{zh_count(n1 * c1)}元，买{f2}花了{zh_count(n2 * c2)}元。")
    d.s(f"{p}一共花了{zh_count(n1 * c1 + n2 * c2)}元。")
    return d


def _fill(rng: random.Random, template: str) -> str:
    animal = ANIMALS[rng.choice(list(ANIMALS))]
    farm = ANIMALS[rng.choice(FARM_ANIMALS)]
    food = rng.choice(FOODS)
    colour = COLOURS[rng.choice(list(COLOURS))]
    return template.format(a_animal=a_an(animal["en"]), animal_pl=animal["en_pl"], zh_animal=animal["zh"], food_pl=food[1],
                           zh_food=food[3], colour=colour[0], zh_colour=colour[1],
                           farm_pl=farm["en_pl"], zh_farm=farm["zh"])


def en_dialogue(rng: random.Random) -> Doc:
    d = Doc("en")
    n1, _ = pick_person(rng, "en")
    n2, _ = pick_person(rng, "en", n1)
    place, reason, _, _ = rng.choice(DESTINATIONS)
    d.s(f"\"Where are you going, {n2}?\" asked {n1}.")
    d.new_paragraph()
    d.s(f"\"I am going to {place},\" said {n2}.", f"\"{_fill(rng, reason)}\"")
    d.new_paragraph()
    d.s(f"\"Can I come with you?\" asked {n1}.")
    d.new_paragraph()
    if rng.random() < 0.7:
        d.s(f"\"Of course,\" said {n2}.", "\"Let's go together.\"")
    else:
        chore = rng.choice(SOLO_ACTIVITIES)[1]
        d.s(f"\"Not today,\" said {n2}.", f"\"I have to {_fill(rng, chore)} this afternoon.\"")
        d.new_paragraph()
        d.s(f"\"Maybe next time, then,\" said {n1}.")
    return d


def zh_dialogue(rng: random.Random) -> Doc:
    d = Doc("zh")
    n1, _ = pick_person(rng, "zh")
    n2, _ = pick_person(rng, "zh", n1)
    _, _, place, reason = rng.choice(DESTINATIONS)
    d.s(f"“{n2}，你要去哪里？”{n1}问。")
    d.new_paragraph()
    d.s(f"“我要去{place}，”{n2}说，“{_fill(rng, reason)}。”")
    d.new_paragraph()
    d.s(f"“我可以和你一起去吗？”{n1}问。")
    d.new_paragraph()
    if rng.random() < 0.7:
        d.s(f"“当然可以！”{n2}笑着说，“我们一起走吧。”")
    else:
        chore = rng.choice(SOLO_ACTIVITIES)[3]
        d.s(f"“今天不行，”{n2}说，“今天下午我要{_fill(rng, chore)}。”")
        d.new_paragraph()
        d.s(f"“那我们下次再一起去吧。”{n1}说。")
    return d


def _diary_date(rng: random.Random) -> tuple[dict, int, int]:
    """Weather, month (1..12) and day of month for a diary entry; snow only from November to March."""
    key = rng.choice(list(WEATHER))
    month = rng.choice([11, 12, 1, 2, 3] if key == "snowy" else range(1, 13))
    return WEATHER[key], month, rng.randint(1, 28)


def en_diary(rng: random.Random) -> Doc:
    d = Doc("en")
    i = rng.randrange(7)
    weather, month, mday = _diary_date(rng)
    friend, _ = pick_person(rng, "en")
    solo = rng.choice(SOLO_ACTIVITIES)
    shared, later = rng.sample(SHARED_ACTIVITIES, 2)
    d.line("Dear diary,")
    d.s(f"Today was {EN_DAYS[i]}, {mday} {EN_MONTHS[month - 1]}, "
        f"and the weather was {weather['en']}.")
    d.s(f"In the morning, I {_fill(rng, solo[0])}.")
    d.s(rng.choice([f"In the afternoon, I {shared[0]} with {friend}.",
                    f"In the afternoon, {friend} and I {shared[0]}."]))
    d.s(rng.choice(["It was a good day, and I felt happy.", "I was tired but happy.",
                    "I felt proud of myself.", "I laughed a lot today."]))
    if rng.random() < 0.7:
        d.s(f"Tomorrow is {EN_DAYS[(i + 1) % 7]}, and I want to {later[1]} with my friends.")
    return d


def zh_diary(rng: random.Random) -> Doc:
    d = Doc("zh")
    i = rng.randrange(7)
    weather, month, mday = _diary_date(rng)
    friend, _ = pick_person(rng, "zh")
    solo = rng.choice(SOLO_ACTIVITIES)
    shared, later = rng.sample(SHARED_ACTIVITIES, 2)
    d.line(f"{month}月{mday}日　{ZH_DAYS[i]}　{weather['zh_label']}")
    d.s(f"今天{weather['zh_diary']}。")
    d.s(f"上午，我{_fill(rng, solo[2])}。")
    d.s(f"下午，我和{friend}一起{shared[2]}。")
    d.s(rng.choice(["今天过得很好，我很开心。", "我有点累，但是很高兴。", "我为自己感到骄傲。",
                    "今天我笑了很多次。"]))
    if rng.random() < 0.7:
        d.s(f"明天是{ZH_DAYS[(i + 1) % 7]}，我想和朋友们一起{later[3]}。")
    return d


# (weight, English generator, Chinese generator)
DOC_TYPES: list[tuple[float, Callable[[random.Random], Doc], Callable[[random.Random], Doc]]] = [
    (30, en_story, zh_story),
    (12, en_math, zh_math),
    (6, en_legs, zh_legs),
    (6, en_counting, zh_counting),
    (9, en_calendar, zh_calendar),
    (8, en_colours, zh_colours),
    (7, en_animal_facts, zh_animal_facts),
    (7, en_shopping, zh_shopping),
    (8, en_dialogue, zh_dialogue),
    (7, en_diary, zh_diary),
]


def make_document(rng: random.Random, lang: str) -> str:
    """The text of one document in `lang` ("en" or "zh")."""
    weights = [w for w, _, _ in DOC_TYPES]
    _, en_gen, zh_gen = rng.choices(DOC_TYPES, weights=weights)[0]
    doc = (en_gen if lang == "en" else zh_gen)(rng)
    if not MIN_SENTENCES <= doc.sentences <= MAX_SENTENCES:
        raise AssertionError(f"{doc.sentences} sentences in {doc.text()!r}")
    return doc.text()


def write_corpus(path: Path, rng: random.Random, target_bytes: int, avoid: set[str]) -> dict:
    """Write documents until the file reaches about target_bytes; skip any text in `avoid`.

    Adds every written text to `avoid`, so a later call shares no document with this one.
    """
    size = lines = skipped = 0
    per_lang = {"en": 0, "zh": 0}
    languages: list[str] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while size < target_bytes:
            if not languages:
                languages = LANGUAGE_BLOCK[:]
                rng.shuffle(languages)
            lang = languages.pop()
            text = make_document(rng, lang)
            while text in avoid:  # draw again in the same language
                skipped += 1
                text = make_document(rng, lang)
            avoid.add(text)
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            lines += 1
            per_lang[lang] += 1
    return dict(path=path, bytes=size, lines=lines, skipped_duplicates=skipped, **per_lang)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where pretrain.jsonl and val.jsonl are written")
    parser.add_argument("--train-kb", type=float, default=250, help="approximate size of pretrain.jsonl in KiB")
    parser.add_argument("--val-kb", type=float, default=20, help="approximate size of val.jsonl in KiB")
    args = parser.parse_args(argv)

    seen: set[str] = set()
    # Separate, string-seeded streams: deterministic across runs and Python versions >= 3.2.
    train = write_corpus(args.out_dir / "pretrain.jsonl", random.Random(f"{args.seed}:train"),
                         int(args.train_kb * 1024), seen)
    val = write_corpus(args.out_dir / "val.jsonl", random.Random(f"{args.seed}:val"),
                       int(args.val_kb * 1024), seen)
    for stats in (train, val):
        print(f"{stats['path']}: {stats['lines']} documents, {stats['bytes']} bytes "
              f"({stats['en']} English, {stats['zh']} Chinese; "
              f"{stats['skipped_duplicates']} duplicates skipped)")


if __name__ == "__main__":
    main()
